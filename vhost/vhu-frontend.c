#include "vhu-frontend.h"
