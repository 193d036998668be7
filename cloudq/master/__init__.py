"""The master: owns every task, worker and reservation."""
