"""The worker side of cloudq: resource probes and the runners that execute tasks."""
