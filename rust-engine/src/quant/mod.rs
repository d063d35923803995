//! I2_S flavours and ternary kernels (being written).
