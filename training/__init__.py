"""Model families (gpt, lstm, ngram), training loop, fine-tuning and the checkpoint format."""
