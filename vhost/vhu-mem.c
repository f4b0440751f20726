#include "vhu-mem.h"
