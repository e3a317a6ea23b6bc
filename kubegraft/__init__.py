"""kubegraft: fine-tune pretrained models on Kubernetes, or locally, from one manifest.

This core package holds the typed API, CRD generation, the pure launch builder, exit codes and
the CLI. It must stay light: importing it never imports torch or kopf (a test checks that), so
the operator image and the CLI start fast.
"""

__version__ = "0.1.0"
