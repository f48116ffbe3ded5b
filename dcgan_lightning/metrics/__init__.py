"""Image-quality metrics: FID/KID/MiFID through torchmetrics, the weights-free SWD, their caches."""
