"""Model-free meta-RL: sampling many tasks through vector envs, returns and baselines, TRPO/PPO, MAML-RL."""
