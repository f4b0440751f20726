/* snd-tool: a static ALSA client for the sound guest tests, on the raw PCM
 * ioctls (the initramfs has no libasound).
 *
 *   snd-tool play FREQ SECONDS RATE   a sine tone, S16 stereo, on
 *                                     /dev/snd/pcmC0D0p; prints how long the
 *                                     writes and the drain took
 *   snd-tool record SECONDS RATE      S16 stereo from /dev/snd/pcmC0D0c;
 *                                     prints the frequency heard (positive
 *                                     zero crossings of the left channel)
 *
 * Periods of at least 20 ms: the kernel's smallest otherwise underruns under
 * TCG. */
#include <fcntl.h>
#include <math.h>
#include <sound/asound.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static double
now_ms(void)
{
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void
mask_set(struct snd_pcm_hw_params *p, int param, unsigned bit)
{
  struct snd_mask *m = &p->masks[param - SNDRV_PCM_HW_PARAM_FIRST_MASK];

  memset(m, 0, sizeof *m);
  m->bits[bit / 32] = 1u << (bit % 32);
}

static void
interval_set(struct snd_pcm_hw_params *p, int param, unsigned min, unsigned max)
{
  struct snd_interval *i = &p->intervals[param - SNDRV_PCM_HW_PARAM_FIRST_INTERVAL];

  memset(i, 0, sizeof *i);
  i->min = min;
  i->max = max;
  i->integer = 1;
}

static int
pcm_open(const char *dev, unsigned rate, unsigned *period)
{
  struct snd_pcm_hw_params p;
  int fd = open(dev, O_RDWR);

  if (fd < 0) {
    perror(dev);
    exit(1);
  }
  memset(&p, 0, sizeof p);
  for (int i = 0; i <= SNDRV_PCM_HW_PARAM_LAST_MASK - SNDRV_PCM_HW_PARAM_FIRST_MASK; i++)
    memset(&p.masks[i], 0xff, sizeof p.masks[i]);
  for (int i = 0; i <= SNDRV_PCM_HW_PARAM_LAST_INTERVAL - SNDRV_PCM_HW_PARAM_FIRST_INTERVAL; i++)
    p.intervals[i].max = ~0u;
  mask_set(&p, SNDRV_PCM_HW_PARAM_ACCESS, SNDRV_PCM_ACCESS_RW_INTERLEAVED);
  mask_set(&p, SNDRV_PCM_HW_PARAM_FORMAT, SNDRV_PCM_FORMAT_S16_LE);
  mask_set(&p, SNDRV_PCM_HW_PARAM_SUBFORMAT, SNDRV_PCM_SUBFORMAT_STD);
  interval_set(&p, SNDRV_PCM_HW_PARAM_CHANNELS, 2, 2);
  interval_set(&p, SNDRV_PCM_HW_PARAM_RATE, rate, rate);
  interval_set(&p, SNDRV_PCM_HW_PARAM_PERIOD_TIME, 20000, 50000);
  interval_set(&p, SNDRV_PCM_HW_PARAM_PERIODS, 4, 8);
  p.rmask = ~0u;
  if (ioctl(fd, SNDRV_PCM_IOCTL_HW_PARAMS, &p) < 0) {
    perror("HW_PARAMS");
    exit(1);
  }
  *period = p.intervals[SNDRV_PCM_HW_PARAM_PERIOD_SIZE - SNDRV_PCM_HW_PARAM_FIRST_INTERVAL].min;
  if (ioctl(fd, SNDRV_PCM_IOCTL_PREPARE) < 0) {
    perror("PREPARE");
    exit(1);
  }
  return fd;
}

static int
play(double freq, double seconds, unsigned rate)
{
  unsigned period;
  int fd = pcm_open("/dev/snd/pcmC0D0p", rate, &period);
  long total = (long)(seconds * rate), done = 0;
  short *buf = malloc((size_t)period * 4);
  int xruns = 0;
  double t0 = now_ms(), t1;

  while (done < total) {
    long n = total - done < period ? total - done : period;
    struct snd_xferi x = { 0, buf, (snd_pcm_uframes_t)n };

    for (long i = 0; i < n; i++)
      buf[2 * i] = buf[2 * i + 1] = (short)lrint(12000 * sin(2 * M_PI * freq * (done + i) / rate));
    if (ioctl(fd, SNDRV_PCM_IOCTL_WRITEI_FRAMES, &x) < 0) {
      xruns++;
      ioctl(fd, SNDRV_PCM_IOCTL_PREPARE);
      continue;
    }
    done += x.result;
  }
  ioctl(fd, SNDRV_PCM_IOCTL_DRAIN);
  t1 = now_ms();
  printf("E2E: PLAYED frames=%ld rate=%u period=%u ms=%.0f xruns=%d\n", done, rate, period, t1 - t0,
         xruns);
  close(fd);
  return 0;
}

static int
record(double seconds, unsigned rate)
{
  unsigned period;
  int fd = pcm_open("/dev/snd/pcmC0D0c", rate, &period);
  long total = (long)(seconds * rate), done = 0, crossings = 0, first = -1, last = -1;
  short *buf = malloc((size_t)period * 4), prev = 0;
  double t0 = now_ms(), t1;

  while (done < total) {
    struct snd_xferi x = { 0, buf, period };

    if (ioctl(fd, SNDRV_PCM_IOCTL_READI_FRAMES, &x) < 0) {
      perror("READI_FRAMES");
      ioctl(fd, SNDRV_PCM_IOCTL_PREPARE);
      continue;
    }
    for (long i = 0; i < (long)x.result; i++) {
      short s = buf[2 * i];

      if (prev < 0 && s >= 0) {
        if (first < 0)
          first = done + i;
        last = done + i;
        crossings++;
      }
      prev = s;
    }
    done += x.result;
  }
  t1 = now_ms();
  printf("E2E: HEARD freq=%.1f frames=%ld ms=%.0f\n",
         crossings > 1 ? (double)(crossings - 1) * rate / (double)(last - first) : 0.0, done,
         t1 - t0);
  close(fd);
  return 0;
}

int
main(int argc, char **argv)
{
  if (argc == 5 && strcmp(argv[1], "play") == 0)
    return play(atof(argv[2]), atof(argv[3]), (unsigned)atoi(argv[4]));
  if (argc == 4 && strcmp(argv[1], "record") == 0)
    return record(atof(argv[2]), (unsigned)atoi(argv[3]));
  fprintf(stderr, "usage: snd-tool play FREQ SECONDS RATE | record SECONDS RATE\n");
  return 2;
}
