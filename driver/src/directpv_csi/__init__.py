"""directpv.csi: local drives as Kubernetes PersistentVolumes (CSI driver csi.directpv.dev)."""

__version__ = "0.1.0"
DRIVER_NAME = "csi.directpv.dev"
LABEL_PREFIX = "directpv.dev/"
