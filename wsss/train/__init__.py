"""Ray Train loops."""
