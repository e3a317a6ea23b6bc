# kubegraft Helm chart

Installs the kubegraft operator: the `FineTuneJob` CRD, the operator Deployment (kopf), its
ServiceAccount and least-privilege RBAC, the metrics Service and, when switched on,
prometheus-operator monitors, Grafana dashboard ConfigMaps and a PrometheusRule.

```sh
helm install kubegraft charts/kubegraft -n kubegraft-system --create-namespace
# only some namespaces (a Role per namespace instead of a ClusterRole):
helm install kubegraft charts/kubegraft -n kubegraft-system --create-namespace \
  --set 'watchNamespaces={team-a,team-b}'
```

## CRDs and upgrades

The CRDs are rendered from `templates/crds/` (generated from `manifests/crd/`), not from
`crds/`: Helm installs `crds/` once and never upgrades it, so a new API version would never
reach the cluster. `helm upgrade` therefore upgrades the CRDs with the operator. They carry
`helm.sh/resource-policy: keep` (`crds.keep`, default on): `helm uninstall` leaves them, and
with them every FineTuneJob. To remove everything: `helm uninstall` and then
`kubectl delete crd finetunejobs.kubegraft.io`.

Where only a cluster administrator may install CRDs, they apply them once (and on every
upgrade) with `kubectl apply --server-side -f manifests/crd/ -f manifests/operator/peering.yaml`
and the release is installed with `--set crds.enabled=false`.

## Monitoring

`serviceMonitor.enabled` scrapes the operator, `podMonitor.enabled` the trainers' rank-0
pods (prometheus-operator CRDs required; add `additionalLabels: {release: prometheus}` or what
your Prometheus selects on). `dashboards.enabled` creates one ConfigMap per
`dashboards/*.json` in the chart, labelled `grafana_dashboard: "1"` for Grafana's sidecar;
`prometheusRule.enabled` one PrometheusRule from the rule groups in `rules/*.yaml`. Without
such files nothing is rendered for them.

## Values

`values.schema.json` rejects wrong types and unknown keys (`helm install` names the key).

{{VALUES}}
