#include "vhu-vring-private.h"
