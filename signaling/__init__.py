"""signaling: a horizontally scalable WebRTC signaling cluster."""

__version__ = "0.1.0"
