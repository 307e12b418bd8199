"""Inner adaptation, meta-training (MAML), model fitting, checkpoints and priors."""
