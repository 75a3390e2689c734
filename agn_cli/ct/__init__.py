"""CT: volume I/O with geometry, preprocessing from the model card, sliding-window inference, the segmenter."""
