"""Training: OETrainer, its one scoring loop, the outlier stream, callbacks, joint padding."""
