#include "vhu-msg.h"
