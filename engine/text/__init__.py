"""Text: the SentencePiece tokenizer with its streaming decoder, the chat format and the prefix
rule."""
