// Sound (WebAudio beep) and vibration for new alarms. Browsers only let audio start after
// a user gesture, so the context is created (unlocked) on the first tap or key press.
let audio = null;

export function unlockAudio() {
  const Context = window.AudioContext || window.webkitAudioContext;
  if (!Context) return;
  if (!audio) audio = new Context();
  if (audio.state === "suspended") audio.resume().catch(() => {});
}

function tone(at, frequency, seconds) {
  const osc = audio.createOscillator();
  const gain = audio.createGain();
  osc.type = "square";
  osc.frequency.value = frequency;
  gain.gain.setValueAtTime(0.0001, at);
  gain.gain.exponentialRampToValueAtTime(0.25, at + 0.02);
  gain.gain.exponentialRampToValueAtTime(0.0001, at + seconds);
  osc.connect(gain).connect(audio.destination);
  osc.start(at);
  osc.stop(at + seconds + 0.02);
}

/** Two-tone beep plus vibration. Counts alerts in <html data-alerts> (for tests and support). */
export function alertNewAlarm() {
  const root = document.documentElement;
  root.dataset.alerts = String(Number(root.dataset.alerts || 0) + 1);
  if (navigator.vibrate) navigator.vibrate([400, 150, 400, 150, 400]);
  if (!audio || audio.state !== "running") return;
  const now = audio.currentTime;
  tone(now, 880, 0.25);
  tone(now + 0.3, 660, 0.25);
  tone(now + 0.6, 880, 0.35);
}
