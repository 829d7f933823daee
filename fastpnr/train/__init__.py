"""the training engine: the continual loop, one phase's steps, CUDA graphs, optimizers."""
