"""The HTTP face: /metrics, health probes and a live console, over the control methods."""
