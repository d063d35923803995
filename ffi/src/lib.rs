//! bitnet.cpp, the C++ reference (being written).
