"""Standalone torchrun trainer for every KOSMOS-G stage (run from the checkout: ``torchrun -m training.train``)."""
