"""Ray- and MLflow-free computation: localization maps, pseudo-masks, scores."""
