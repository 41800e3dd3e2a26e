"""Datasets in the VOC layout: the layout (voc), the one reader (reader), the torch view
(dataset), decoding, the synthetic generator and joint transforms."""
