"""Production: how much of each draft survived into the signed report, and when a champion drifts."""
