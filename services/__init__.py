"""The running parts of loraroute: one sub-package per service, plus `common`."""
