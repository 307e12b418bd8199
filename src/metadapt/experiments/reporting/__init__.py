"""Reporting: metrics, reports, figures, videos and progress output of runs."""
