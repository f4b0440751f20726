/* vcf-checks-gpu.c: virtio-gpu (virtio 1.3 §5.7) and display-socket checks. */
#include "vcf-check.h"

const VcfCheck vcf_gpu_checks[] = {
  { NULL },
};
