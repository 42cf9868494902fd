"""The consumer side: the owner client, data-free distillation, local generation and evaluation."""
