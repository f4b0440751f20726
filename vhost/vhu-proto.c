#include "vhu-proto.h"
