// Command training-operator runs Kubeflow's training-operator v1.8.1 PyTorchJob controller as
// the side-by-side baseline of bench/operator_scale.py (never a dependency of kubegraft).
//
// Upstream's main (cmd/training-operator.v1) has no flag for the client's QPS and burst, so it
// always runs with controller-runtime's 20/30; this main sets them before the manager starts
// (0 keeps upstream's defaults) and otherwise wires the same reconciler as upstream. It leaves
// out the webhook server and its certificate rotator: the benchmark registers no webhook
// configuration, so upstream's would validate nothing, and its rotator waits for a namespace,
// a Secret and files at a fixed /tmp path before it starts any controller.
package main

import (
	"flag"
	"os"

	"go.uber.org/zap/zapcore"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	kubeflowv1 "github.com/kubeflow/training-operator/pkg/apis/kubeflow.org/v1"
	"github.com/kubeflow/training-operator/pkg/config"
	controllerv1 "github.com/kubeflow/training-operator/pkg/controller.v1"
	"github.com/kubeflow/training-operator/pkg/controller.v1/common"
)

func main() {
	var metricsAddr, probeAddr, namespace string
	var threads, burst int
	var qps float64
	flag.StringVar(&metricsAddr, "metrics-bind-address", "0", "metrics address (0: off)")
	flag.StringVar(&probeAddr, "health-probe-bind-address", "0", "probe address (0: off)")
	flag.StringVar(&namespace, "namespace", "", "the only namespace to watch (empty: all)")
	flag.IntVar(&threads, "controller-threads", 1, "reconcile workers (upstream's default: 1)")
	flag.Float64Var(&qps, "kube-api-qps", 0, "client QPS (0: controller-runtime's default, 20)")
	flag.IntVar(&burst, "kube-api-burst", 0, "client burst (0: controller-runtime's default, 30)")
	// Upstream's flags for the workers' init container (it waits for the master's DNS name),
	// with upstream's defaults.
	config.Config.PyTorchInitContainerImage = config.PyTorchInitContainerImageDefault
	config.Config.PyTorchInitContainerTemplateFile = config.PyTorchInitContainerTemplateFileDefault
	config.Config.PyTorchInitContainerMaxTries = config.PyTorchInitContainerMaxTriesDefault
	opts := zap.Options{Development: false, StacktraceLevel: zapcore.DPanicLevel}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))
	log := ctrl.Log.WithName("setup")

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(kubeflowv1.AddToScheme(scheme))

	cfg := ctrl.GetConfigOrDie()
	if qps > 0 {
		cfg.QPS = float32(qps)
	}
	if burst > 0 {
		cfg.Burst = burst
	}
	log.Info("client", "qps", cfg.QPS, "burst", cfg.Burst, "threads", threads)

	var cacheOpts cache.Options
	if namespace != "" {
		cacheOpts = cache.Options{DefaultNamespaces: map[string]cache.Config{namespace: {}}}
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress: probeAddr,
		Cache:                  cacheOpts,
	})
	if err != nil {
		log.Error(err, "unable to create the manager")
		os.Exit(1)
	}
	setup := controllerv1.SupportedSchemeReconciler[kubeflowv1.PyTorchJobKind]
	if err := setup(mgr, common.GenNonGangSchedulerSetupFunc(), threads); err != nil {
		log.Error(err, "unable to create the PyTorchJob controller")
		os.Exit(1)
	}
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		log.Error(err, "manager stopped")
		os.Exit(1)
	}
}
