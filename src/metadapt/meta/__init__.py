"""Meta-training and the iterative collect-and-fit loop."""
