"""What reads a study's results: best trial and status, report, export, dashboard, progress,
the driver's watch, and predictions from a saved model."""
