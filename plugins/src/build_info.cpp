// Build information of the native library; lets Python check that the library it loaded is ours.
extern "C" const char* mrcnn_build_info() { return "mrcnn-kernels 0.1.0 (cpu)"; }
