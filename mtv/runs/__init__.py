"""A run directory's trained weights: atomic checkpoints written and read back (`checkpoint`), a
finished run restored as its spec, task graph and tokenizer (`restore`), and exported as a Hugging
Face SigLIP directory (`export`)."""
