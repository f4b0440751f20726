#include "vhu-backend.h"
