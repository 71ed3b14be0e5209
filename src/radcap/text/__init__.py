"""Report text: normalization rules, tokenization and the vocabulary, the rule-based finding labeler."""
