"""The learner: batches from the store to weight updates."""
