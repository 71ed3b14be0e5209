"""Report generation: caption sets, the decoders' training (cross-entropy, self-critical), the saved captioner bundle
and its decoding, bulk captioning into an output folder."""
