// How window scores become events: the page's port of pipelines/events.py (EventStream).
// A window's probabilities are averaged over the last `smoothing` windows; the best
// keyword's smoothed score is a candidate when it reaches its threshold; a candidate fires
// when it starts a run (the window before was not a candidate of the same keyword) and the
// last event is at least `refractory_ms` ago. Times are seconds of audio (a window's end).

export class EventStream {
  constructor(labels, config) {
    this.labels = labels;
    this.smoothing = config.smoothing;
    this.refractory = config.refractory_ms / 1000;
    this.columns = [];
    this.thresholds = [];
    labels.forEach((label, column) => {
      if (label in config.thresholds) {
        this.columns.push(column);
        this.thresholds.push(config.thresholds[label]);
      }
    });
    this.history = [];  // the last `smoothing` windows' probabilities
    this.index = 0;
    this.lastEventTime = -Infinity;
    this.lastIndex = -2;
    this.lastLabel = -1;
  }

  // probabilities: one window's scores (array over labels), time: when the window ends.
  // Returns {events: [{label, time, score}], smoothed: Float64Array over labels}.
  push(probabilities, time) {
    this.history.push(Array.from(probabilities));
    if (this.history.length > this.smoothing) this.history.shift();
    const smoothed = new Float64Array(this.labels.length);
    for (const row of this.history) {
      for (let i = 0; i < row.length; i++) smoothed[i] += row[i];
    }
    for (let i = 0; i < smoothed.length; i++) smoothed[i] /= this.history.length;
    let best = 0;
    for (let k = 1; k < this.columns.length; k++) {
      if (smoothed[this.columns[k]] > smoothed[this.columns[best]]) best = k;
    }
    const score = smoothed[this.columns[best]];
    const events = [];
    const index = this.index++;
    if (this.columns.length && score >= this.thresholds[best]) {
      const startsRun = !(index === this.lastIndex + 1 && best === this.lastLabel);
      if (startsRun && time - this.lastEventTime >= this.refractory - 1e-9) {
        events.push({label: this.labels[this.columns[best]],
                     time: Math.round(time * 1e4) / 1e4, score: Math.round(score * 1e4) / 1e4});
        this.lastEventTime = time;
      }
      this.lastIndex = index;
      this.lastLabel = best;
    }
    return {events, smoothed};
  }
}
