"""linnix-exporter: what eBPF costs this node, measured in the kernel."""

__version__ = "0.1.0"
