//! Training pieces for ResNet-38.
