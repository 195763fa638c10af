"""Process orchestration: the graph configuration, the launcher's supervisor, monitoring logic."""
