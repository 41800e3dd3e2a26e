"""The pipeline's steps, each run on an executor (a local loop or Ray Data): train_cls, maps,
masks, pseudo_label, train_seg, predict; report holds what every step reports and its MLflow
block."""
