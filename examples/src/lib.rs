//! Holds the examples; see `examples/*.rs`.
