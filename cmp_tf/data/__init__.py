"""Input side of CMP: files and generated scenes -> (frame, next frame, flow) -> batches."""
