"""Text: the SentencePiece tokenizer with its streaming decoder, the chat format, the prefix
rule, and the one prompt builder and context fitter (`prompt`)."""
