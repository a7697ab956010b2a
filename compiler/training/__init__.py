"""Training methods: the linear probe, fine-tuning, distillation, cross-validated choices,
adaptation to unlabelled images, and bringing a model trained elsewhere."""
