"""Generation and inspection: prefill and the decode loop, the sampler and its stages, surprisal
and attention."""
