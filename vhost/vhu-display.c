#include "vhu-display.h"
