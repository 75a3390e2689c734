"""Ultrasound: frame I/O, frame preprocessing, plane classifier, boxes from attention, SonoNet conversion."""
