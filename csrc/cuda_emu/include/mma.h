// Emulator shim: see csrc/cuda_emu/README.md.
#pragma once
#include "../wmma.h"
